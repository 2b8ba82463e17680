"""Built-in edgebox plugins (installed as the package `edgebox_plugins`); each folder is one plugin."""
