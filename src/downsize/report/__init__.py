"""`downsize report`: one self-contained HTML page of what the store knows (tasks, specialists, routing, mode
changes, money, conversion)."""
