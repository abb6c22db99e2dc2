"""Running exported explanation graphs: Explainer, and class model visualisation over its saliency graph."""
