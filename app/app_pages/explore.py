"""Explore: the map of one layer's activations, hover previews, click selection and neighbours."""

from app import explore

explore.main()
