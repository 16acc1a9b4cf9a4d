"""Local stand-ins for the gcp, tls, random and command provider plugins, for the real engine."""
