"""Training code for fexsdk: data loading, StarGAN models and the trainer."""
