"""CTR/CVR ranking on TorchRec embedding tables with interchangeable interaction backbones."""
