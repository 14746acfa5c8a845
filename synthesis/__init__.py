"""DerMAE synthesis: sample a class-conditioned diffusion model into a synthetic training set, and judge its quality."""
