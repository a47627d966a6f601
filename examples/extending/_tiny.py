"""Shared tiny settings so every extension example runs in seconds (not an example)."""

TINY = {
    "data_options": {"n_users": 30, "samples_per_user": 24},
    "model_options": {"hidden_units": [8]},
    "model": "dnn",
    "cloud": {"epochs": 1},
    "local": {"epochs": 1, "batch_size": 16},
}
