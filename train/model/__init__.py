"""The PointAD model library: everything scoring needs, nothing of training.

model_config (which CLIP, its taps and dual path; data only), weights (finding and reading weight files
without executing them, torchscript / torch_files), backbone (the frozen CLIP and `encode_views`), prompts
(the learnable prompt embeddings), maps (probabilities, patch maps, back-projection to points),
checkpoint (the run checkpoint format), device. `eval/` imports these and never the training loop or a
command-line module. Nothing is imported here: `import pointad.train.model.model_config` loads no torch.
"""
