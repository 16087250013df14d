"""The data stages: load → split → labelize → serialize (preprocess), then tokenize."""
