"""Model families, one file each: the `nn.Module` and its `@dataclass` config together."""
