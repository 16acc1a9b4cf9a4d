"""Components of the kthw program: one concern per module, wired together by cluster.py."""
