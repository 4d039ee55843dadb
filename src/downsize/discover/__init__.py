"""Task discovery (S3): structural signatures, clusters of what varies, labels, suitability, the assigner."""
