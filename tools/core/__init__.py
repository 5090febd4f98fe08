"""Facts and models every stage shares: the lock, recipes, vendors, labels, paths and the user error."""
