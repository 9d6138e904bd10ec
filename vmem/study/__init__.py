"""The paper's analyses over merged runs: loading, comparisons, tables, figures, the report."""
