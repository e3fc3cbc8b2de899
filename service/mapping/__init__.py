"""Field mapping: the mapper, data-type coercion and the pluggy plugin registry."""
