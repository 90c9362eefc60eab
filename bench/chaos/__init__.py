"""The fault and fuzz suite behind `make chaos` (a short form runs in `make test`)."""
