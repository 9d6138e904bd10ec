"""Bytes in and out: atomic files, local-or-S3 folders (`Location`), the mmap dataset format and
the token datasets read through them."""
