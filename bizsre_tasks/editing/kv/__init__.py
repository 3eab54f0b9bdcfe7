"""Key-value machinery of ROME and MEMIT: key statistics, their corpora, the value optimisation."""
