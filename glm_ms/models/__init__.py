"""One file per model family network (`chatglm`, `chatglm2`) over the shared base in `base`."""
