"""Training: the LightningModule, the train function behind visionpilot-train, callbacks, fine-tuning strategies."""
