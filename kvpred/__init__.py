"""KV Prediction: an auxiliary model's cache, projected per layer, stands in for the base's.

layer_map.py   which auxiliary layer feeds each base layer (LP, C, or an explicit list)
"""
