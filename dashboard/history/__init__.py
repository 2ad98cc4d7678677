"""History: the revision graph, page by page, and single revisions."""
