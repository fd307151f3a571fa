"""What goes into the models: images (rendered scenes with their truth, or image files) and
text (the embedded region-labelled corpus, local files, Hugging Face datasets)."""
