"""Small Pulumi programs the contract tests run under the built CLI (each is copied in as __main__.py)."""
