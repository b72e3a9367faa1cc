from .segmamba import SegMamba
