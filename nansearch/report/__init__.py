"""report.html: the page, its sections and its charts."""
