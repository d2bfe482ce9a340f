"""Models of the search spaces, written functionally (parameters as dicts) for ``torch.func``."""
