"""Built-in sinks. Registered under the ``vaeguard.sinks`` entry-point group in vaeguard's own
pyproject.toml and discovered like any plugin."""
