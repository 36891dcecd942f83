import StorkCore
