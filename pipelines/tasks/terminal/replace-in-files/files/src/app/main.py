from io import fetch_data

print(fetch_data())
