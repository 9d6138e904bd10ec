"""Bytes in and out: atomic files, local-or-S3 folders (`Location`), S3 calls and the mmap
indexed dataset format. The token datasets read through them are `vmem.data`."""
