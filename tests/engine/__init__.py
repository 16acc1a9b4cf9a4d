"""The engine tier: the real Pulumi CLI on the real program, with local provider plugins."""
