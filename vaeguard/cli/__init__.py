"""The `vaeguard` command line. Each module registers one group of commands on the app."""
