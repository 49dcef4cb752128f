"""The training library: one loop (`loop`), its step (`steps`), checkpoints and metrics.

train.py and train_addition.py are thin entry points that hand a `loop.Task` to
`loop.train_loop`.
"""
