"""Next-word language models: RNN, LSTM, GRU, Transformer, Mamba; their graphs, evaluation, card and n-gram baseline."""
