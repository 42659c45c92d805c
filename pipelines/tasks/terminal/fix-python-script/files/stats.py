with open("numbers.txt") as fh:
    values = [float(x) for x in fh if x.strip()]
print(f"{sum(values) / (len(values) + 1):.2f}")
