"""The one error type the checkpoint readers raise."""


class CheckpointError(ValueError):
    """A checkpoint file or folder is missing, corrupt, unsafe or inconsistent."""
