"""Built-in demo: its config (a synthetic camera showing a person) and the photo the demo source plays."""
