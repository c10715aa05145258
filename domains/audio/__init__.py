"""The audio domain: waveforms and log-mel / fbank frames as units, wav2vec 2.0 / HuBERT / APC / TERA encoders."""
