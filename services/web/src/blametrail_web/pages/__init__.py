"""One module per page or resource: its routes and form handling."""
