"""Renderers of analysis and search results: terminal tables and the self-contained HTML report."""
