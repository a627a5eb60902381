"""Feed formats (pure parsers), the feed catalog and the one HTTP client."""
