"""An example custom schedule (scheduler.type "custom", scheduler.function
"docs/examples/warm_restart_schedule.py:shape"): a 10% linear warmup, then a cosine to 0.1 that
restarts once at 60% with half the height. Called once with every step k (int64 array) and T."""

import numpy as np


def shape(k, total_steps):
    warmup = max(1, round(0.1 * total_steps))
    restart = round(0.6 * total_steps)
    f = np.empty(k.shape)
    rising = k < warmup
    f[rising] = k[rising] / warmup
    first = (k >= warmup) & (k < restart)
    q = (k[first] - warmup) / (restart - warmup)
    f[first] = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * q))
    second = k >= restart
    q = (k[second] - restart) / (total_steps - restart)
    f[second] = 0.1 + 0.4 * 0.5 * (1 + np.cos(np.pi * q))
    return f
