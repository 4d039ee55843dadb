"""The `downsize` command: thin shells over the library."""
