"""The app's pages (listed by the navigation in app.py) and their shared helpers (_*.py)."""
