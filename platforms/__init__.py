"""The grounds a cluster can stand on, one package each; `kthw:platform` picks one per stack."""
