"""Model families: everything the trainer needs to know about a model, one module each (see `base`)."""
