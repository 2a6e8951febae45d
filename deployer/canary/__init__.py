"""The canary's decisions and transformations (pure): its objects, its weights, its verdict, rollout status."""
