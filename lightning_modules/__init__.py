"""LightningModules, one per training method; plain nn code lives in components/."""
