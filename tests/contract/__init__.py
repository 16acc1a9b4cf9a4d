"""Contracts between the real Pulumi plugins and this project's stand-ins, and the program's guards against them."""
