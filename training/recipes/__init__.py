"""Recipes: the exact stages and configs that produce the shipped models."""
