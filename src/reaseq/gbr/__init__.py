"""Generative Behavior Reasoning (GBR): a masked diffusion model that infers beyond-log behaviours.

Modules: model (the network), train (LLaDA-style training), infer (unmasking), beyond_log (the protocol that
measures it), baselines (generators it is compared with), augment (the per-user table the ranker reads), step
(the pipeline step). Import from those modules: this package file stays empty so that reaseq.config can import
gbr.config without pulling in the training code.
"""
