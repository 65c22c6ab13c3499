"""Command-line client and local stack launcher for prospect."""
