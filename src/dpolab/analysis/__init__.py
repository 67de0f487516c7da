"""Analyses of trained models on preference pairs: the layer-wise DPO likelihood (Intermediate DPO,
Fig. 3) and the token-level log-probs around the first differing token (Smaug, Fig. 3).

    from dpolab.analysis.pairs import load_tokenized_pairs
    from dpolab.analysis.layers import analyze_layers
    from dpolab.analysis.tokens import token_analysis
    from dpolab.analysis.plots import plot_layers, plot_tokens
"""
